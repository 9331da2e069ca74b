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

The package: ``hashing`` (pHash, the band search), ``files`` (rows and the file pass),
``duplicates``, ``stats`` (IQR, histograms), ``sheet`` (the contact sheet), ``report``
(inspect.json, Markdown, HTML, exclusions) and ``options`` (the flags). This module imports
nothing heavier than the standard library, so ``bench --help`` (which reads ``options``)
loads no numpy; its public names load their module on first use.
"""

from __future__ import annotations

import importlib
import os
import re
import time
from pathlib import Path
from typing import Sequence

from .options import DEFAULT_MIN_CORR, DEFAULT_NEAR_THRESHOLD, KINDS, check_options

__all__ = [
    "DEFAULT_NEAR_THRESHOLD", "KINDS", "NearPair", "cmd_inspect",
    "cross_split_near_duplicates", "cross_split_warning", "inspect_dataset",
    "inspect_html_section", "inspect_markdown", "near_duplicate_pairs", "pair_correlation",
    "phash",
    "read_exclusions", "write_contact_sheet",
]

_LAZY = {"NearPair": "hashing", "cross_split_near_duplicates": "hashing",
         "cross_split_warning": "hashing", "near_duplicate_pairs": "hashing",
         "pair_correlation": "hashing", "phash": "hashing",
         "inspect_html_section": "report", "inspect_markdown": "report",
         "read_exclusions": "report", "write_contact_sheet": "sheet"}


def __getattr__(name: str):
    """The public names of the numpy-using modules, imported on first use (PEP 562)."""
    if name in _LAZY:
        return getattr(importlib.import_module(f".{_LAZY[name]}", __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


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
    ``iqr_k``: the IQR fence factor for colour statistics. ``near_min_corr``: least
    correlation of the two grey images (-1: hash only). ``min_side``: flag originals whose shorter side is below it (default: the IQR lower
    fence of log2 of the shorter side at ``low_res_k``, Tukey's "far out" 3 by default:
    with 1.5, 122 of the 2,002 Kaggle photos, ordinary ones down to 177 px, were flagged).
    ``exclude``: which kinds of finding go into the exclusion list (see :data:`KINDS`).
    ``sheet_max``: images (or pairs) on the contact sheet (0: none); ``sheet_kinds`` /
    ``sheet_cross_split_only`` select what it shows.
    """
    from runtime import io as bio

    from . import duplicates, files, report, sheet, stats

    exclude = tuple(exclude)
    sheet_kinds = check_options(
        image_size=image_size, near_threshold=near_threshold, near_min_corr=near_min_corr,
        iqr_k=iqr_k, min_side=min_side, low_res_k=low_res_k, sheet_max=sheet_max,
        exclude=exclude, sheet_kinds=sheet_kinds, val_fraction=val_fraction,
        test_fraction=test_fraction)
    workers = workers or max(1, len(os.sched_getaffinity(0)))
    timing = {}
    t_all = time.perf_counter()
    rows = files.load_rows(os.fspath(spec), image_size, val_fraction=val_fraction,
                           test_fraction=test_fraction, cache_dir=cache_dir, seed=seed,
                           progress=progress, workers=workers, data_dir=data_dir,
                           timing=timing, labels=labels, id_column=id_column,
                           label_column=label_column)
    files.read_files(rows, workers, timing)
    found = files.Findings()
    dups = duplicates.find_duplicates(rows, found, near_threshold=near_threshold,
                                      near_min_corr=near_min_corr, timing=timing)
    t = time.perf_counter()
    fences = stats.colour_outliers(rows, found, iqr_k)
    low_res = stats.low_resolution(rows, found, min_side, low_res_k)
    timing["stats_s"] = time.perf_counter() - t
    result = report.build_result(
        rows, dups, found, settings=_settings(near_threshold, near_min_corr, iqr_k, min_side,
                                              low_res_k, exclude),
        seed=seed, val_fraction=val_fraction, test_fraction=test_fraction, fences=fences,
        low_res=low_res, sizes=stats.original_sizes(rows))
    if out_dir is not None:
        out = Path(out_dir)
        t = time.perf_counter()
        if sheet_max and sheet.draw_inspection_sheet(
                result, rows, dups.pair_rows, found, out / "contact.png", max_items=sheet_max,
                kinds=sheet_kinds, cross_only=sheet_cross_split_only):
            result["outputs"]["contact_sheet"] = "contact.png"
        timing["sheet_s"] = time.perf_counter() - t
        report.write_exclusions(out, result)
        result["outputs"].update(exclusions_txt="exclusions.txt",
                                 exclusions_json="exclusions.json",
                                 json="inspect.json", markdown="inspect.md")
    timing["total_s"] = time.perf_counter() - t_all
    result["timing"] = {k: round(v, 3) for k, v in timing.items()}
    if out_dir is not None:
        bio.write_json(out / "inspect.json", result)
        bio.write_text(out / "inspect.md", report.inspect_markdown(result))
    return result


def _settings(near_threshold, near_min_corr, iqr_k, min_side, low_res_k, exclude) -> dict:
    """inspect.json's ``settings``: the hash and the thresholds the findings used."""
    return {
        "hash": "pHash 64-bit: DCT-II of the 32x32 grey image, 8x8 lowest frequencies, "
                "bit = coefficient > median of the 64",
        "near_threshold": near_threshold, "near_min_corr": near_min_corr,
        "iqr_k": iqr_k, "min_side": min_side,
        "low_res_k": low_res_k,
        "exclude": list(exclude),
    }


def cmd_inspect(args) -> int:
    """Run ``bench inspect``; prints the headline figures and where the files are."""
    name = re.sub(r"[^A-Za-z0-9_.-]+", "_", Path(str(args.dataset)).stem
                  if ":" not in str(args.dataset) else str(args.dataset)).strip("_")
    out = Path(args.out) if args.out else Path("results") / "inspect" / (name or "dataset")
    result = inspect_dataset(
        args.dataset, out, image_size=args.image_size, cache_dir=args.cache_dir,
        seed=args.seed, val_fraction=args.val_fraction, test_fraction=args.test_fraction,
        near_threshold=args.near_threshold, near_min_corr=args.near_min_corr,
        iqr_k=args.iqr_k, min_side=args.min_side, low_res_k=args.low_res_k,
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
