"""Per-image colour statistics with IQR fences, the low-resolution rule, class balance and
the original sizes' summaries and histograms."""

from __future__ import annotations

from collections import Counter
from typing import Sequence

import numpy as np

from .files import Findings, Rows
from .options import SPLIT_ORDER

COLOUR_STATS = ("mean R", "mean G", "mean B", "std R", "std G", "std B")


def _iqr_fences(x: np.ndarray, k: float) -> tuple[float, float, float, float]:
    q1, q3 = np.percentile(x, [25, 75])
    return float(q1), float(q3), float(q1 - k * (q3 - q1)), float(q3 + k * (q3 - q1))


def _colour_stats(images: np.ndarray, chunk: int = 8192) -> np.ndarray:
    """(N, 6): per-image mean and standard deviation of R, G, B (0..255)."""
    out = np.empty((len(images), 6), np.float32)
    for s in range(0, len(images), chunk):
        x = images[s:s + chunk].reshape(len(images[s:s + chunk]), -1, 3).astype(np.float32)
        out[s:s + len(x), :3] = x.mean(1)
        out[s:s + len(x), 3:] = x.std(1)
    return out


def _histogram(values: np.ndarray, edges: Sequence[float]) -> dict:
    counts, e = np.histogram(values, bins=np.asarray(edges, float))
    return {"edges": [float(v) for v in e], "counts": [int(c) for c in counts]}


def _describe(x: np.ndarray) -> dict:
    if x.size == 0:
        return {}
    p = np.percentile(x, [0, 25, 50, 75, 100])
    return dict(zip(("min", "q1", "median", "q3", "max"), (round(float(v), 3) for v in p)))


def colour_outliers(rows: Rows, found: Findings, iqr_k: float) -> dict:
    """Flag images outside ``[Q1 - k IQR, Q3 + k IQR]`` on any colour statistic; the fences."""
    stats = _colour_stats(rows.images)
    fences = {}
    for c, name in enumerate(COLOUR_STATS):
        q1, q3, lo, hi = _iqr_fences(stats[:, c], iqr_k)
        fences[name] = {"q1": round(q1, 2), "q3": round(q3, 2), "low": round(lo, 2),
                        "high": round(hi, 2)}
        for k in np.flatnonzero((stats[:, c] < lo) | (stats[:, c] > hi)):
            v = float(stats[k, c])
            side = f"< {lo:.1f}" if v < lo else f"> {hi:.1f}"
            prev = [f for f in found.get(int(k), []) if f["kind"] == "colour-outlier"]
            if prev:
                prev[0]["reason"] += f", {name} {v:.1f} {side}"
            else:
                found.flag(int(k), "colour-outlier", f"colour outlier: {name} {v:.1f} {side}")
    return fences


def low_resolution(rows: Rows, found: Findings, min_side: int | None,
                   low_res_k: float) -> dict:
    """Flag originals whose shorter side is below ``min_side`` (default: the IQR lower fence
    of log2 shorter side at ``low_res_k``), and files whose header could not be read."""
    wh = rows.wh
    if wh is None:
        return {}
    short = wh.min(1)
    ok = short > 0
    if min_side is None and ok.any():
        _, _, lo, _ = _iqr_fences(np.log2(short[ok]), low_res_k)
        threshold_side = float(2 ** lo)
        rule = (f"shorter side < {threshold_side:.1f} px (IQR lower fence of log2 shorter "
                f"side, k={low_res_k})")
    else:
        threshold_side = float(min_side or 0)
        rule = f"shorter side < {threshold_side:.0f} px (--min-side)"
    for k in np.flatnonzero(ok & (short < threshold_side)):
        found.flag(int(k), "low-resolution",
                   f"low resolution: {wh[k, 0]}x{wh[k, 1]} (shorter side < "
                   f"{threshold_side:.0f})")
    for k, why in rows.problems.items():  # readable by the decoder but not by the header pass
        found.flag(k, "unreadable", f"header unreadable: {why}")
    return {"rule": rule, "min_side": round(threshold_side, 2),
            "count": int((ok & (short < threshold_side)).sum())}


def class_counts(rows: Rows) -> tuple[dict, np.ndarray, dict]:
    """Counts per split and class, per class over all splits, and the balance figures."""
    ds = rows.ds
    counts = {s: {c: int(v) for c, v in zip(ds.classes, np.bincount(
        ds.splits[s].labels, minlength=ds.num_classes))} for s in SPLIT_ORDER}
    per_class = np.bincount(rows.labels, minlength=ds.num_classes)
    nz = per_class[per_class > 0]
    p = nz / nz.sum()
    balance = {"min_class": ds.classes[int(np.argmin(per_class))], "min": int(per_class.min()),
               "max_class": ds.classes[int(np.argmax(per_class))], "max": int(per_class.max()),
               "max_over_min": (round(float(per_class.max() / per_class.min()), 3)
                                if per_class.min() else None),
               "normalised_entropy": (round(float(-(p * np.log(p)).sum() / np.log(len(p))), 4)
                                      if len(p) > 1 else 0.0)}
    return counts, per_class, balance


def original_sizes(rows: Rows) -> dict:
    """Summaries and histograms of the originals' sizes, aspect ratios and bytes."""
    wh, nbytes = rows.wh, rows.nbytes
    if wh is None:
        return {}
    good = wh.min(1) > 0
    w_, h_ = wh[good, 0], wh[good, 1]
    short, aspect = np.minimum(w_, h_), w_ / np.maximum(h_, 1)
    top = Counter(zip(w_.tolist(), h_.tolist())).most_common(5)
    return {
        "width": _describe(w_), "height": _describe(h_), "shorter_side": _describe(short),
        "aspect_w_over_h": _describe(aspect),
        "most_common": [{"w": a, "h": b, "count": c} for (a, b), c in top],
        "distinct_sizes": len(set(zip(w_.tolist(), h_.tolist()))),
        "shorter_side_hist": _histogram(short, [0, 16, 32, 48, 64, 96, 128, 192, 256, 384,
                                               512, 768, 1024, max(1025, int(short.max()) + 1)]),
        "aspect_hist": _histogram(aspect, [0, 0.5, 0.67, 0.8, 0.9, 0.99, 1.01, 1.11, 1.25,
                                           1.5, 2.0, max(2.01, float(aspect.max()) + 0.01)]),
        "bytes": _describe(nbytes[good].astype(float)),
    }
