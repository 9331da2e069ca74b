"""The data set object and ``load_dataset``: resolve a spec to a source, subset it, decode
it (or read the cache), split it."""

from __future__ import annotations

import dataclasses
import logging
import os
import time
from pathlib import Path
from typing import Sequence

import numpy as np

from .cache import CACHE_FORMAT, digest, read_cache, resolve_cache_dir, safe_name, write_cache
from .decode import RESIZE_METHOD, decode_all
from .sources import Source, digits_source, path_source, tfds_source
from .options import Options
from .splits import Split, make_splits, subset

log = logging.getLogger('bench.data')


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
    excluded: list = dataclasses.field(default_factory=list)
    layout: str = ""               # the layout detected (``split_info["layout"]`` too)
    files_readable: bool = False   # Split.files are image files below ``source``

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    def summary(self) -> dict:
        """JSON-able description for run records (no arrays)."""
        return {
            "name": self.name,
            "source": self.source,
            "layout": self.layout,
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
            **({"excluded_count": len(self.excluded), "excluded": self.excluded[:200]}
               if self.excluded else {}),
        }



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
    exclude: str | os.PathLike | Sequence[str] | None = None,
    labels: str | os.PathLike | None = None,
    id_column: str | None = None,
    label_column: str | None = None,
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
      exclude: files to leave out, as source-relative paths (zip member names, or paths below
        the folder), or a file listing them one a line (``bench inspect``'s
        ``exclusions.txt``; ``#`` comments). They change the fingerprint and are listed in
        ``Dataset.excluded``.
      labels: a ``.csv`` (or ``.jsonl``) naming each image of the folder and its label
        (default: a ``labels.csv``/``train.csv``/``train_labels.csv``/``metadata.csv`` found
        in the folder; see ``bench.data.csv_labels``).
      id_column, label_column: the table's columns (default: detected by name); for
        Hugging Face parquet/arrow files ``label_column`` names the label column.

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
    opts = Options(size=size, seed=seed, val_fraction=val_fraction,
                    test_fraction=test_fraction, progress=progress,
                    max_per_class=max_per_class, workers=workers or _cpu_count(),
                    cache_dir=resolve_cache_dir(cache_dir), exclude=_exclusions(exclude))
    spec_str = os.fspath(spec)
    if labels is not None and (spec_str == "digits" or spec_str.startswith("tfds:")):
        raise ValueError(f"--labels {os.fspath(labels)!r}: {spec_str!r} has its own labels; "
                         "--labels is for a folder or zip of images")
    if spec_str == "digits":
        source = digits_source()
        opts = dataclasses.replace(opts, cache_dir=None)
    elif spec_str.startswith("tfds:"):
        source = tfds_source(spec_str, data_dir=data_dir, download=download)
    else:
        source = path_source(Path(spec_str).expanduser(), labels=labels, id_column=id_column,
                             label_column=label_column)
    return _prepare(source, opts)


# --------------------------------------------------------------------------------------------
# The pipeline shared by every kind of spec: subset, cache or decode, split.


def _file_name(key) -> str:
    """A row's source file as a string: the zip member or the path below the folder; array
    sources' keys (an index, or ``(split, index)``) as ``index`` / ``split/index``."""
    if isinstance(key, str):
        return key
    if isinstance(key, (tuple, list)):
        return "/".join(map(str, key))
    return str(key)


def _warn_small_classes(splits, src, split_info) -> None:
    """Classes with no training image, or too few to appear in every split, are named in the
    split record and logged: a class with one image has no validation or test image."""
    warnings = list(src.warnings)
    for c, name in enumerate(src.classes):
        counts = {k: int((s.labels == c).sum()) for k, s in splits.items()}
        empty = [k for k, n in counts.items() if n == 0]
        if empty:
            warnings.append(f"class {name!r} has no images in {', '.join(empty)} "
                            f"({sum(counts.values())} in all)")
    for w in warnings:
        log.warning("%s: %s", src.source, w)
    if warnings:
        split_info["warnings"] = warnings


def _exclusions(exclude) -> tuple[str, ...]:
    if exclude is None:
        return ()
    if isinstance(exclude, (str, os.PathLike)):
        path = Path(exclude).expanduser()
        if not path.is_file():
            raise ValueError(f"--exclude {str(exclude)!r}: not a file; expected a list of "
                             f"source-relative image paths, one a line")
        lines = path.read_text("utf-8", "replace").splitlines()
        return tuple(sorted({s.strip() for s in lines if s.strip() and not
                             s.lstrip().startswith("#")}))
    return tuple(sorted(set(map(str, exclude))))


def _prepare(src: Source, opts: Options) -> Dataset:
    groups = src.groups
    excluded: list[str] = []
    if opts.exclude:
        drop = set(opts.exclude)
        kept = {}
        for g, (keys, labels) in groups.items():
            mask = np.array([k not in drop for k in keys], bool)
            excluded += [k for k, m in zip(keys, mask) if not m]
            kept[g] = ([k for k, m in zip(keys, mask) if m], labels[mask])
        groups = kept
    groups = subset(groups, opts.max_per_class, opts.seed)
    key = digest({
        "format": CACHE_FORMAT, "source": src.fingerprint, "size": opts.size,
        "resize": RESIZE_METHOD, "max_per_class": opts.max_per_class,
        "subset_seed": opts.seed if opts.max_per_class else None,
        **({"excluded": digest(sorted(excluded))} if excluded else {}),
    })
    h, w = opts.size
    cache_path = None
    if opts.cache_dir is not None:
        cache_path = opts.cache_dir / f"{safe_name(src.name)}-{h}x{w}-{key[:16]}"
    t0 = time.perf_counter()
    cached = (read_cache(cache_path, key, len(src.classes)) if cache_path is not None
              else None)
    if cached is not None:
        arrays, skipped, files = cached
        cache_info = {"path": str(cache_path), "hit": True}
    else:
        arrays, skipped, files = {}, [], {}
        for g, (keys, labels) in groups.items():
            images, ok, bad = decode_all(src, keys, opts, f"{src.name} {g}")
            arrays[g] = (images, labels[ok])
            files[g] = [_file_name(k) for k, good in zip(keys, ok) if good]
            skipped += bad
        if sum(len(v[1]) for v in arrays.values()) == 0:
            first = skipped[0] if skipped else {}
            raise ValueError(f"{src.source}: none of its {len(skipped)} images could be "
                             f"decoded (first: {first.get('path')}: {first.get('reason')})")
        cache_info = {"path": str(cache_path) if cache_path else None, "hit": False}
        if cache_path is not None:
            meta = {"key": key, "format": CACHE_FORMAT, "source": src.source,
                    "size": list(opts.size), "classes": src.classes, "groups": list(arrays),
                    "skipped": skipped, "files": files}
            try:
                write_cache(cache_path, arrays, meta)
            except OSError as e:  # a full or read-only disk costs the cache, not the run
                log.warning("could not write the dataset cache %s: %s", cache_path, e)
                cache_info["path"] = None
    skipped = list(src.unlisted) + list(skipped)
    if skipped:
        log.warning("%s: skipped %d unreadable image(s), e.g. %s (%s)", src.source,
                    len(skipped), skipped[0]["path"], skipped[0]["reason"])
    splits, split_info = make_splits(arrays, src.classes, opts, files)
    _warn_small_classes(splits, src, split_info)
    cache_info["seconds"] = round(time.perf_counter() - t0, 3)  # decode or read, and split
    split_info["layout"] = src.layout
    if src.labels:
        split_info["labels"] = src.labels
    fingerprint = digest({
        "source": src.fingerprint, "seed": opts.seed, "val_fraction": opts.val_fraction,
        "test_fraction": opts.test_fraction, "max_per_class": opts.max_per_class,
        **({"excluded": digest(sorted(excluded))} if excluded else {}),
    })
    return Dataset(name=src.name, source=src.source, fingerprint=fingerprint,
                   classes=list(src.classes), image_size=opts.size, splits=splits,
                   skipped=skipped, split_info=split_info, resize=RESIZE_METHOD,
                   source_fingerprint=src.fingerprint, cache=cache_info, excluded=excluded,
                   layout=src.layout, files_readable=src.files_readable)


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



def _cpu_count() -> int:
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1

