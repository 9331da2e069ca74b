"""The options of one ``load_dataset`` call, as the pipeline stages read them."""

from __future__ import annotations

import dataclasses
from pathlib import Path


@dataclasses.dataclass(frozen=True)
class Options:
    size: tuple[int, int]
    seed: int
    val_fraction: float
    test_fraction: float
    progress: bool
    max_per_class: int | None
    workers: int
    cache_dir: Path | None
    exclude: tuple[str, ...] = ()
