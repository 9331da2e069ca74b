"""Find pretrained weight files offline; download only when the caller asks, checksum-verified."""

from __future__ import annotations

import hashlib
import os
import sys
import tempfile
import urllib.request
from pathlib import Path

from ._registry import ModelInfo, PretrainedFile

ENV_WEIGHTS_DIR = "BENCH_WEIGHTS_DIR"


def cache_dir() -> Path:
    """The user cache for weight files: ``$BENCH_CACHE_DIR/weights`` or ``~/.cache/bench/weights``."""
    root = os.environ.get("BENCH_CACHE_DIR")
    base = Path(root) if root else Path.home() / ".cache" / "bench"
    return base / "weights"


def file_digest(path: str | os.PathLike, algo: str) -> str:
    h = hashlib.new(algo)
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def verify_file(path: Path, spec: PretrainedFile) -> None:
    """Raise ``ValueError`` naming the file when its size or checksum differs from ``spec``."""
    if spec.size is not None and path.stat().st_size != spec.size:
        raise ValueError(
            f"{path}: size {path.stat().st_size} bytes, expected {spec.size} for {spec.filename}"
        )
    for algo in ("sha256", "md5"):
        expected = getattr(spec, algo)
        if expected:
            got = file_digest(path, algo)
            if got != expected:
                raise ValueError(f"{path}: {algo} {got} does not match the expected {expected}")
            return


def _package_file(spec: PretrainedFile) -> Path | None:
    if not spec.package:
        return None
    import importlib.util

    found = importlib.util.find_spec(spec.package)
    if found is None or not found.submodule_search_locations:
        return None
    root = Path(list(found.submodule_search_locations)[0])
    path = root / (spec.package_path or spec.filename)
    return path if path.is_file() else None


def pretrained_spec(info: ModelInfo, tag: str = "imagenet") -> PretrainedFile:
    try:
        return info.pretrained[tag]
    except KeyError:
        have = ", ".join(info.pretrained) or "none"
        raise ValueError(
            f"model {info.name!r} has no pretrained weights {tag!r} (available: {have})"
        ) from None


def resolve_pretrained(
    info: ModelInfo,
    tag: str = "imagenet",
    *,
    weights_dir: str | os.PathLike | None = None,
    download: bool = False,
    verify: bool = True,
) -> Path:
    """Path of the pretrained file for ``info``.

    Looks, in order, in ``weights_dir`` (or ``$BENCH_WEIGHTS_DIR``), the installed package that
    ships it, and the user cache. Only with ``download=True`` is the file fetched from its URL,
    checked against its checksum and stored atomically in the cache.
    """
    spec = pretrained_spec(info, tag)
    candidates: list[Path] = []
    wdir = weights_dir or os.environ.get(ENV_WEIGHTS_DIR)
    if wdir:
        candidates.append(Path(wdir) / spec.filename)
    pkg = _package_file(spec)
    if pkg is not None:
        candidates.append(pkg)
    candidates.append(cache_dir() / spec.filename)
    for path in candidates:
        if path.is_file():
            if verify:
                verify_file(path, spec)
            return path
    if not download or not spec.url:
        where = ", ".join(str(p.parent) for p in candidates)
        how = (
            f" Pass download=True (CLI: --download) to fetch {spec.url}"
            if spec.url
            else f" Install the package {spec.package!r}." if spec.package else ""
        )
        raise FileNotFoundError(
            f"pretrained weights {spec.filename!r} for {info.name!r} not found in {where}.{how}"
        )
    return download_file(spec, cache_dir())


def download_file(spec: PretrainedFile, dest_dir: Path) -> Path:
    """Fetch ``spec.url`` into ``dest_dir`` atomically; refuse it on a checksum mismatch."""
    dest_dir.mkdir(parents=True, exist_ok=True)
    dest = dest_dir / spec.filename
    size = f" ({spec.size / 1e6:.1f} MB)" if spec.size else ""
    print(f"Downloading {spec.url}{size} -> {dest}", file=sys.stderr)
    fd, tmp = tempfile.mkstemp(dir=dest_dir, prefix=f".{spec.filename}.", suffix=".part")
    try:
        with os.fdopen(fd, "wb") as out, urllib.request.urlopen(spec.url) as resp:
            for chunk in iter(lambda: resp.read(1 << 20), b""):
                out.write(chunk)
        verify_file(Path(tmp), spec)
        os.replace(tmp, dest)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return dest
