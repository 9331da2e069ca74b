"""What every source reader shares: the :class:`Source` record, the split-folder names and a
data set's display name. ``sources``, ``csv_labels`` and ``hf`` build on it."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import numpy as np

# Folder names accepted as splits, and the split each one stands for.
SPLIT_FOLDERS = {"train": "train", "val": "val", "valid": "val", "validation": "val",
                 "test": "test"}


@dataclasses.dataclass
class Source:
    """A spec resolved to a list of items per group, before any decoding."""

    name: str
    source: str
    fingerprint: str                       # of the source content and the class order
    classes: list[str]
    groups: dict[str, tuple[list, np.ndarray]]   # 'train'/'val'/'test' or 'all' -> keys, labels
    reader: Any                            # .read(key) -> bytes or array; .display(key) -> str
    layout: str
    parallel: bool = True                  # whether the reader may be used from threads
    unlisted: list = dataclasses.field(default_factory=list)  # files that could not be listed
    warnings: list = dataclasses.field(default_factory=list)  # said on the console and recorded
    labels: dict = dataclasses.field(default_factory=dict)    # label tables' counts (CSV, HF)
    files_readable: bool = False           # keys are image files below ``source`` (inspect)


GENERIC_NAMES = frozenset({"train", "training", "test", "val", "valid", "validation", "images",
                           "imgs", "img", "data", "dataset", "datasets", "all", "photos",
                           "pictures", "files", "archive", "download", "downloads"})


def display_name(path: Path) -> str:
    """A data set's name in tables and run ids: the last path part (a zip without its
    suffix), prefixed by the folder above when the part is generic ("train.zip" in
    dogs-vs-cats/ -> "dogs-vs-cats-train"; food101-3class/images -> "food101-3class-images")."""
    stem = path.stem if path.is_file() else path.name
    if stem.lower() in GENERIC_NAMES and path.parent.name:
        return f"{path.parent.name}-{stem}"
    return stem
