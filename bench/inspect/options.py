"""``bench inspect``'s flags, defaults and their checks: standard library only (as is the
package's ``__init__``), so ``bench --help`` loads no numpy."""

from __future__ import annotations

import argparse
import math
import numbers

# Measured on the 2,002 Kaggle Dogs vs. Cats originals (tests/test_inspect.py, module
# docstring of the CLI help): the one genuine duplicate pair is at distance 2, the closest
# pair of different photographs at 10. pHash distances are even (32 of 64 bits are set).
# Second stage: zero-mean normalised correlation of the two 32x32 grey images. On CIFAR-10's
# 864 pHash pairs within 6, the 20 pairs with different labels (different photographs of a
# small object on sky) had correlations 0.04 to 0.72; byte-different copies of one photo
# mostly 0.8 to 1.
DEFAULT_NEAR_THRESHOLD = 6
DEFAULT_MIN_CORR = 0.8
KINDS = ("unreadable", "exact-duplicate", "near-duplicate", "low-resolution", "colour-outlier")
SPLIT_ORDER = ("train", "val", "test")


def _kinds_arg(flag: str):
    def parse(text: str) -> tuple[str, ...]:
        kinds = tuple(k.strip() for k in text.split(",") if k.strip())
        bad = [k for k in kinds if k not in KINDS]
        if bad or not kinds:
            raise argparse.ArgumentTypeError(
                f"{flag} {text!r}: expected a comma-separated subset of {','.join(KINDS)}")
        return kinds
    return parse


def add_inspect_parser(subparsers) -> argparse.ArgumentParser:
    """Register ``bench inspect`` on an ``argparse`` subparsers object."""
    p = subparsers.add_parser(
        "inspect", help="class balance, sizes, unreadable files, exact and near duplicates "
        "(within and across splits), colour outliers; contact sheet and exclusion list")
    p.add_argument("--dataset", required=True,
                   help="'digits', a folder or .zip of images, or tfds:NAME (as for train)")
    p.add_argument("--labels", help="a .csv (or .jsonl) naming each image and its label (as for "
                   "train; default: a labels.csv, train.csv, train_labels.csv or metadata.csv "
                   "in the folder)")
    p.add_argument("--id-column", help="--labels' id/file column (default: detected by name)")
    p.add_argument("--label-column", help="the label column (default: detected by name)")
    p.add_argument("--out", help="output folder (default: results/inspect/<dataset name>)")
    p.add_argument("--image-size", type=int, default=32,
                   help="decoded size read from / written to the cache (default 32; hashing "
                        "runs at 32x32)")
    p.add_argument("--cache-dir", help="prepared-data cache (as for train)")
    p.add_argument("--data-dir", help="tensorflow-datasets data directory for tfds: specs")
    p.add_argument("--seed", type=int, default=0, help="split seed (as for train)")
    p.add_argument("--val-fraction", type=float, default=0.1,
                   help="validation share when the data has no val split (default 0.1)")
    p.add_argument("--test-fraction", type=float, default=0.2,
                   help="test share when the data has no test split (default 0.2)")
    p.add_argument("--near-threshold", type=int, default=DEFAULT_NEAR_THRESHOLD,
                   help=f"largest pHash Hamming distance of a near duplicate (default "
                        f"{DEFAULT_NEAR_THRESHOLD} of 64)")
    p.add_argument("--near-min-corr", type=float, default=DEFAULT_MIN_CORR,
                   help="second stage: least correlation of the two 32x32 grey images "
                        f"(default {DEFAULT_MIN_CORR}; -1: hash only)")
    p.add_argument("--iqr-k", type=float, default=1.5,
                   help="IQR fence factor for colour statistics (default 1.5)")
    p.add_argument("--min-side", type=int,
                   help="flag originals whose shorter side is below this (default: the IQR "
                        "lower fence of log2 shorter side at --low-res-k)")
    p.add_argument("--low-res-k", type=float, default=3.0,
                   help="IQR fence factor of the automatic low-resolution rule (default 3)")
    p.add_argument("--exclude", type=_kinds_arg("--exclude"), default=KINDS,
                   help=f"kinds written to exclusions.txt (default: {','.join(KINDS)})")
    p.add_argument("--sheet-max", type=int, default=60,
                   help="images or pairs on contact.png (0: no sheet; default 60)")
    p.add_argument("--sheet-kinds", type=_kinds_arg("--sheet-kinds"),
                   help="kinds shown on the contact sheet (default: all)")
    p.add_argument("--sheet-cross-split", action="store_true",
                   help="contact sheet of duplicate pairs across splits only")
    p.add_argument("--quiet", "-q", action="store_true", help="no progress bars")
    return p


def check_options(*, image_size, near_threshold, near_min_corr, iqr_k, min_side, low_res_k,
                  sheet_max, exclude, sheet_kinds, val_fraction, test_fraction
                  ) -> tuple[str, ...]:
    """Check ``inspect_dataset``'s settings (one-line ValueError); return the sheet's kinds."""
    # numbers.Integral: int and numpy's integers (numpy registers them), without numpy here.
    if not (isinstance(near_min_corr, (int, float)) and -1 <= near_min_corr <= 1):
        raise ValueError(f"--near-min-corr {near_min_corr}: expected a correlation in -1..1")
    if not (isinstance(low_res_k, (int, float)) and math.isfinite(low_res_k) and low_res_k > 0):
        raise ValueError(f"--low-res-k {low_res_k}: expected a positive number")
    if not isinstance(image_size, numbers.Integral) or image_size < 8:
        raise ValueError(f"--image-size {image_size}: expected an integer of at least 8")
    if not isinstance(near_threshold, numbers.Integral) or not 0 <= near_threshold <= 32:
        raise ValueError(f"--near-threshold {near_threshold}: expected a Hamming distance "
                         "in 0..32 (of 64 bits)")
    if not (isinstance(iqr_k, (int, float)) and math.isfinite(iqr_k) and iqr_k > 0):
        raise ValueError(f"--iqr-k {iqr_k}: expected a positive number (1.5 is Tukey's)")
    if min_side is not None and (not isinstance(min_side, numbers.Integral) or min_side < 1):
        raise ValueError(f"--min-side {min_side}: expected a positive number of pixels")
    if not isinstance(sheet_max, numbers.Integral) or sheet_max < 0:
        raise ValueError(f"--sheet-max {sheet_max}: expected a non-negative integer")
    bad = sorted(set(exclude) - set(KINDS))
    if bad:
        raise ValueError(f"--exclude {','.join(bad)}: unknown kind; expected some of "
                         f"{','.join(KINDS)}")
    if not (0 <= val_fraction < 1 and 0 <= test_fraction < 1
            and val_fraction + test_fraction < 1):
        raise ValueError(f"--val-fraction {val_fraction} / --test-fraction {test_fraction}: "
                         "expected fractions in [0, 1) whose sum is below 1")
    sheet_kinds = tuple(sheet_kinds) if sheet_kinds else KINDS
    bad = sorted(set(sheet_kinds) - set(KINDS))
    if bad:
        raise ValueError(f"--sheet-kinds {','.join(bad)}: unknown kind; expected some of "
                         f"{','.join(KINDS)}")
    return sheet_kinds
