"""The HDF5 feature file: where it lives, what it holds, how it is written and read back.

One file per backbone and dataset, report 001's layout extended to three splits: datasets
``train``, ``train_labels``, ``val``, ``val_labels``, ``test``, ``test_labels`` (float32
features, int32 labels), and attributes that say exactly what produced them (``IDENTITY`` are
the ones a cached file must match to be reused).
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import tempfile
from pathlib import Path
from typing import Iterator, Mapping, Sequence

import numpy as np

from runtime.io import FILE_MODE

FORMAT_VERSION = 1

# Attributes a cached file must match to be reused: anything else (class names, library
# versions, creation time) follows from these or does not change the features.
IDENTITY = ("format_version", "backbone", "weights_sha256", "input_size", "dataset_fingerprint")

DEFAULT_SPLITS = ("train", "val", "test")

_UNSAFE = re.compile(r"[^A-Za-z0-9._-]+")


def _safe(name: str) -> str:
    return _UNSAFE.sub("_", str(name)).strip("_") or "unnamed"


def feature_path(out_dir, backbone: str, dataset_name: str, fingerprint: str,
                 image_size: Sequence[int]) -> Path:
    """Path of the feature file of ``backbone`` on a dataset, features computed at ``image_size``.

    ``<out_dir>/<dataset>-<fingerprint[:12]>/gap_<backbone>_<H>x<W>.h5``: the files of one
    dataset version sit together, ready for ``load`` to concatenate. The weights are not in
    the name: the file records their checksum, and other weights recompute it in place.
    """
    h, w = (int(v) for v in tuple(image_size)[:2])
    folder = f"{_safe(dataset_name)}-{_safe(fingerprint)[:12]}"
    return Path(out_dir) / folder / f"gap_{_safe(backbone)}_{h}x{w}.h5"


def _attr(value):
    """Normalise an HDF5 attribute for comparison (bytes -> str, arrays -> tuples)."""
    if isinstance(value, bytes):
        return value.decode()
    if isinstance(value, np.ndarray):
        return tuple(value.tolist())
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, (list, tuple)):
        return tuple(value)
    return value


def read_attrs(path) -> dict:
    """The attributes of a feature file, as plain Python values."""
    import h5py

    with h5py.File(path, "r") as f:
        return {k: _attr(v) for k, v in f.attrs.items()}


def reuse_problem(path: Path, identity: Mapping, split_sizes: Mapping[str, int]) -> str | None:
    """Why the file at ``path`` cannot be reused, or ``None`` when it can.

    It can when every ``IDENTITY`` attribute equals ``identity`` and every split is present
    with the expected number of rows (a truncated or foreign file fails here, not later).
    """
    import h5py

    try:
        with h5py.File(path, "r") as f:
            for key in IDENTITY:
                have = _attr(f.attrs.get(key))
                if have != _attr(identity[key]):
                    return f"{key} is {have!r}, expected {_attr(identity[key])!r}"
            for split, n in split_sizes.items():
                for name in (split, f"{split}_labels"):
                    if name not in f:
                        return f"dataset {name!r} is missing"
                    if f[name].shape[0] != n:
                        return f"dataset {name!r} has {f[name].shape[0]} rows, expected {n}"
    except Exception as e:  # noqa: BLE001 - any unreadable file is recomputed, not fatal
        return f"unreadable ({type(e).__name__}: {e})"
    return None


def _temp_pattern(path: Path) -> str:
    return f".{path.name}."


def _remove_stale_temps(path: Path) -> None:
    """Delete temp files of ``path`` left by extractions that were killed (their pid is gone)."""
    for tmp in path.parent.glob(f"{_temp_pattern(path)}*.tmp"):
        try:
            pid = int(tmp.name[len(_temp_pattern(path)):].split(".")[0])
            os.kill(pid, 0)
        except ProcessLookupError:
            tmp.unlink(missing_ok=True)
        except (ValueError, PermissionError, OSError):
            continue  # not ours, or a live process of another user: leave it


@contextlib.contextmanager
def atomic_h5(path: Path) -> Iterator:
    """Open an HDF5 file for writing that appears at ``path`` only once complete.

    Writes to a temp file in the same folder (named with the pid, so a later run can tell a
    killed writer's leftovers from a live one's) and ``os.replace``s it into place on success;
    on any exception the temp file is deleted and ``path`` is left as it was.
    """
    import h5py

    path.parent.mkdir(parents=True, exist_ok=True)
    _remove_stale_temps(path)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f"{_temp_pattern(path)}{os.getpid()}.",
                               suffix=".tmp")
    os.close(fd)
    try:
        with h5py.File(tmp, "w") as f:
            yield f
        os.chmod(tmp, FILE_MODE)  # mkstemp's 0600: give the mode every other result file has
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _open(path: Path):
    import h5py

    try:
        return h5py.File(path, "r")
    except OSError as e:
        raise ValueError(f"{path}: not a readable HDF5 feature file ({e})") from e


def load(paths, splits: Sequence[str] = DEFAULT_SPLITS) -> dict:
    """Load feature files and concatenate them column-wise, rows aligned.

    Args:
      paths: one file or a sequence of files made by ``extract`` on the same dataset.
      splits: the splits to read.

    Returns:
      A :class:`FeatureSet`: ``{split: (X, y) for split in splits}`` with ``X`` float32
      ``(N, sum(dims))`` and ``y`` int32 ``(N,)``; the metadata as attributes ``backbones``,
      ``dims`` (feature width of each file, in order), ``classes`` and ``paths``.

    Raises:
      ValueError: naming the file when it is unreadable or lacks a split, and naming both
        files when two were made from different dataset versions or disagree on labels.
    """
    if isinstance(paths, (str, os.PathLike)):
        paths = [paths]
    paths = [Path(p) for p in paths]
    if not paths:
        raise ValueError("load() needs at least one feature file, got none")
    parts: dict[str, list[np.ndarray]] = {s: [] for s in splits}
    labels: dict[str, np.ndarray] = {}
    backbones, dims = [], []
    first: Path | None = None
    first_attrs: dict = {}
    for path in paths:
        with _open(path) as f:
            attrs = {k: _attr(v) for k, v in f.attrs.items()}
            for split in splits:
                for name in (split, f"{split}_labels"):
                    if name not in f:
                        have = ", ".join(sorted(f.keys())) or "nothing"
                        raise ValueError(
                            f"{path}: no dataset {name!r} (split {split!r}); it holds {have}")
            if first is None:
                first, first_attrs = path, attrs
            elif attrs.get("dataset_fingerprint") != first_attrs.get("dataset_fingerprint"):
                raise ValueError(
                    f"{path} and {first} come from different datasets: fingerprint "
                    f"{attrs.get('dataset_fingerprint')!r} vs "
                    f"{first_attrs.get('dataset_fingerprint')!r}")
            for split in splits:
                x = np.asarray(f[split], np.float32)
                y = np.asarray(f[f"{split}_labels"], np.int32)
                if split not in labels:
                    labels[split] = y
                elif not np.array_equal(y, labels[split]):
                    raise ValueError(
                        f"{path} and {first}: labels of split {split!r} differ "
                        f"({len(y)} vs {len(labels[split])} rows), so rows are not aligned")
                parts[split].append(x)
            backbones.append(attrs.get("backbone", path.stem))
            dims.append(int(attrs.get("feature_dim", parts[splits[0]][-1].shape[1]
                                      if splits else 0)))
    classes = first_attrs.get("classes")
    return FeatureSet({s: (np.concatenate(parts[s], axis=1), labels[s]) for s in splits},
                      backbones=backbones, dims=dims, paths=paths,
                      classes=json.loads(classes) if classes else None)


class FeatureSet(Mapping):
    """What ``load`` returns: a mapping of split name -> ``(X, y)`` and nothing else (so
    ``for split in data`` sees splits only), with the files' metadata as attributes:
    ``backbones``, ``dims`` (feature width of each file, in order), ``paths``, ``classes``."""

    def __init__(self, splits: dict, *, backbones, dims, paths, classes):
        self._splits = dict(splits)
        self.backbones, self.dims, self.paths, self.classes = backbones, dims, paths, classes

    def __getitem__(self, split):
        return self._splits[split]

    def __iter__(self):
        return iter(self._splits)

    def __len__(self) -> int:
        return len(self._splits)

    def __repr__(self) -> str:
        sizes = ", ".join(f"{k}: {v[0].shape}" for k, v in self._splits.items())
        return f"FeatureSet({sizes}; backbones={self.backbones})"
