"""Where the project keeps its caches, and the files that paths on a command line name."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Callable, Iterable


def cache_root() -> Path:
    """``$BENCH_CACHE_DIR``, else ``$XDG_CACHE_HOME/bench``, else ``~/.cache/bench``.

    Sub-folders: ``datasets/`` (decoded arrays), ``weights/`` (pretrained files),
    ``jax/`` (the persistent compilation cache).
    """
    if os.environ.get("BENCH_CACHE_DIR"):
        return Path(os.environ["BENCH_CACHE_DIR"]).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base).expanduser() / "bench"


def expand_paths(items: Iterable, find: Callable[[Path], list[Path]], *, empty: str,
                 missing: str) -> list[Path]:
    """Each item a file (kept) or a folder (replaced by ``find(folder)``), in order.

    A folder where ``find`` finds nothing raises ValueError with ``empty``, a path that is
    neither raises FileNotFoundError with ``missing`` (both formatted with ``{path}``).
    """
    files: list[Path] = []
    for item in items:
        p = Path(item)
        if p.is_dir():
            found = find(p)
            if not found:
                raise ValueError(empty.format(path=p))
            files += found
        elif p.is_file():
            files.append(p)
        else:
            raise FileNotFoundError(missing.format(path=p))
    return files
